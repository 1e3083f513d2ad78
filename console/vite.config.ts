import { defineConfig } from "vite";

// Built into dist/, served by the keys service (services/keys/console.py) at /, assets under /assets/.
// `npm run dev` proxies the APIs to a local `faregate dev` stack's keys service (which proxies the rest).
export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, target: "es2022" },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:8101",
      "/v1": "http://127.0.0.1:8101",
    },
  },
});
