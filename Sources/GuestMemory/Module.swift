// module GuestMemory
