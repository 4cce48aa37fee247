// module VhostUserTesting
