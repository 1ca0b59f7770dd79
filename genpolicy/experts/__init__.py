"""Trained experts for tasks without a scripted demonstrator."""
