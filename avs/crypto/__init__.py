"""BN254 BLS compatible with EigenLayer; see ``avs.crypto.bls`` and ``avs.crypto.curve``."""
