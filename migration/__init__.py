"""tierflow: migration."""
