package server

import "testing"

func TestPickSFTPPortSkipsUsed(t *testing.T) {
	used := map[int]bool{sftpPortBase + 5: true, sftpPortBase + 6: true}
	if p, ok := pickSFTPPort(used, 5); !ok || p != sftpPortBase+7 {
		t.Fatalf("pick from a held port: got %d %v, want %d", p, ok, sftpPortBase+7)
	}
	used[sftpPortBase+sftpPorts-1] = true
	if p, ok := pickSFTPPort(used, sftpPorts-1); !ok || p != sftpPortBase {
		t.Fatalf("pick at the end wraps: got %d %v, want %d", p, ok, sftpPortBase)
	}
	for i := 0; i < sftpPorts; i++ {
		used[sftpPortBase+i] = true
	}
	if p, ok := pickSFTPPort(used, 0); ok {
		t.Fatalf("all held: got port %d, want none", p)
	}
}
