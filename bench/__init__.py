"""`make bench`: Faregate's gateway measured against a direct call, an nginx hop and the LiteLLM proxy."""
