"""drivesim.diffusion"""
