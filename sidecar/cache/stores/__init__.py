"""Where entries live: the exact stores and vector indexes, embedded or shared."""
