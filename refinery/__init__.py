"""llm-refinery: user feedback on an LLM app in, reviewed refinements out."""
