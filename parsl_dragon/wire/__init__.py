"""What both ends of a link share: typed messages, CURVE keys and trusted files, connection files."""
