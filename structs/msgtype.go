package structs

// IgnoreUnknownTypeFlag is set on a raft entry's type byte when a server
// that does not know the type may skip the entry without diverging from
// the others (as in Nomad): new entry types that only add optional state
// (caches, hints, garbage collection of ended objects) carry it. An
// unknown entry without it is an error the server logs loudly (it must be
// upgraded). Types are thus numbered below 128. See docs/upgrades.md.
const IgnoreUnknownTypeFlag MessageType = 128

// Ignorable returns t with IgnoreUnknownTypeFlag set.
func (t MessageType) Ignorable() MessageType { return t | IgnoreUnknownTypeFlag }
