"""Application services: thin use cases (load → call one domain method → save) over the ports."""
