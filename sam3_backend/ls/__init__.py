"""The Label Studio side: protocol, label config, prompts, result encoding, media. Never imports torch."""
