"""The data half of aurl: MIDI I/O, the bundled corpus, the token cache, augmentation and the loader."""
