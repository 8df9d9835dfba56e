"""Sample data shipped inside tlkit (``tlkit.sample_data``): ``shapes/``, the quickstart's images."""
