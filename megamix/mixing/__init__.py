"""Mixing methods: the Mixer interface, the mixing-law math, one module per method."""
