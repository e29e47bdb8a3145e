"""Subquadratic token mixers (pure PyTorch), each with a parallel, a recurrent and a materialised-matrix form."""
