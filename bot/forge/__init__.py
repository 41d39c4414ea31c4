"""The forge: where a repository's code, reviews and merges live (GitHub, or a local git
repository), behind one port that speaks Bosun's terms (``bot.forge.port``)."""
