"""The paper's experiments as commands: the demo, recipes, sweeps, chains and the claim report."""
