"""The edge: Twilio webhooks and media streams, text-channel webhooks, the app, the CLI."""
