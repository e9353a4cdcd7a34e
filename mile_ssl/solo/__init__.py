"""solo-learn recipes: translating their configs and running them with solo-learn's command line."""
