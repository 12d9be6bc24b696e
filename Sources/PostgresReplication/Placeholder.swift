import PGOutput
