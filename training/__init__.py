"""Training recipes for hf_vanilla_transformer: YAML recipes, shared argument code and the two scripts."""
