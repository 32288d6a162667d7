"""rotsweep: sweeps, dynamics and figures for 'Rotational Equilibrium' (Kosson et al., ICML 2024)."""

__version__ = "0.1.0"
