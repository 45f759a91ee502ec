"""Images in: listing a data set, decoding, the bundled digits."""
