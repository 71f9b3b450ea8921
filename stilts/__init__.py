"""stilts: Supplementary Training on Intermediate Labeled-data Tasks for BERT-family encoders."""

__version__ = "0.1.0"
