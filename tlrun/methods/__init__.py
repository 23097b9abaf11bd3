"""Domain-adaptation methods: DANN (gradient reversal + domain discriminator) and multi-kernel MMD."""
