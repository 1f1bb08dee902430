package structs

import "testing"

func TestIsDiskImage(t *testing.T) {
	for img, want := range map[string]bool{
		"/srv/root.qcow2":               true,
		"file:///srv/root.raw":          true,
		"https://example.com/root.img":  true,
		"http://10.0.0.1:8080/root.img": true,
		"":                              false,
		"busybox":                       false,
		"docker.io/library/alpine:3.20": false,
		"localhost:5000/app@sha256:ab":  false,
		"srv/root.qcow2":                false,
	} {
		if got := IsDiskImage(img); got != want {
			t.Errorf("IsDiskImage(%q) = %v, want %v", img, got, want)
		}
	}
}
