"""PinCLIP on pretrained vision-language models: one interface (base.py), one module per family."""
