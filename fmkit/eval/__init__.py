"""How good a frozen backbone's features are (linear probe, kNN) and how close reconstructions are (PSNR)."""
