"""Data: readers, the manifest/card contract, synthetic phantoms, MedMNIST, transforms, cache."""
