// module VhostUserBackend
