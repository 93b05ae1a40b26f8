"""Core library of the verifiable-inference AVS: crypto, typed messages, Merkle trees, keystores."""

__version__ = "0.1.0"
