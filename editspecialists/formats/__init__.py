"""On-disk formats that training, generation and the specialist share: checkpoints and exports."""
