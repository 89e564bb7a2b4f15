"""The results of a session: the typed run record and the store that writes, validates and reads run files."""
