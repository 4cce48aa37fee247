// VhostUserTesting
