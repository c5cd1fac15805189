"""The lip-sync GAN of avatarcast: audio features, networks, training, export, avatars.

Importable without the server; only training and export need torch.
"""
