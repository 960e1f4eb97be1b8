"""The SegEarth-OV Processing provider: segment, segment and vectorize, class statistics, accuracy assessment."""
