"""Small shared utilities: resumable JSONL streams, sharding, paths."""
