"""The meta-learners over OOF probabilities, their calibration and their leaderboard."""
