"""One router per resource: proposals, prompts, tokens, health, and the web UI."""
