"""Networks checkpoints load into: backbone builders, SimCLR-v2 ResNets, preprocessing."""
