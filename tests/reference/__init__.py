"""Reference code the tests compare against (third-party, with its license)."""
