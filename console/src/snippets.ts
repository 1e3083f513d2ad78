// "Copy as code": the same request as curl, Python (openai SDK) and Node (openai SDK).

export interface Req {
  baseUrl: string;
  apiKey: string;
  model: string;
  messages: { role: string; content: string }[];
  params: Record<string, number>;
  stream: boolean;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function pyValue(v: unknown, indent = 0): string {
  // JSON is nearly Python; only true/false/null differ.
  return JSON.stringify(v, null, 2).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None")
    .split("\n").map((l, i) => (i === 0 ? l : " ".repeat(indent) + l)).join("\n");
}

export function snippets(r: Req): { curl: string; Python: string; Node: string } {
  const body: Record<string, unknown> = { model: r.model, messages: r.messages, ...r.params };
  if (r.stream) body.stream = true;
  const curl = [
    `curl ${r.baseUrl}/chat/completions \\`,
    `  -H "Authorization: Bearer ${r.apiKey}" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  ${r.stream ? "-N " : ""}-d ${shellQuote(JSON.stringify(body))}`,
  ].join("\n");
  const extra = Object.entries(r.params).map(([k, v]) => `    ${k}=${v},\n`).join("");
  const python = [
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url="${r.baseUrl}", api_key="${r.apiKey}")`,
    "",
    `${r.stream ? "stream" : "reply"} = client.chat.completions.create(`,
    `    model="${r.model}",`,
    `    messages=${pyValue(r.messages, 4)},`,
    extra + (r.stream ? "    stream=True,\n)" : ")"),
    r.stream ? "for chunk in stream:\n    print(chunk.choices[0].delta.content or \"\", end=\"\")" : "print(reply.choices[0].message.content)",
  ].join("\n");
  const nodeParams = Object.entries(r.params).map(([k, v]) => `  ${k}: ${v},\n`).join("");
  const node = [
    `import OpenAI from "openai";`,
    "",
    `const client = new OpenAI({ baseURL: "${r.baseUrl}", apiKey: "${r.apiKey}" });`,
    "",
    `const ${r.stream ? "stream" : "reply"} = await client.chat.completions.create({`,
    `  model: "${r.model}",`,
    `  messages: ${JSON.stringify(r.messages, null, 2).split("\n").join("\n  ")},`,
    nodeParams + (r.stream ? "  stream: true,\n});" : "});"),
    r.stream ? "for await (const chunk of stream) process.stdout.write(chunk.choices[0]?.delta?.content ?? \"\");"
      : "console.log(reply.choices[0].message.content);",
  ].join("\n");
  return { curl, Python: python, Node: node };
}
