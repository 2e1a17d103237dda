"""Speech and telephony providers: small Protocols (base.py), one file per vendor."""
