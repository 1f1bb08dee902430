// Package golden keeps the wire and raft contracts honest: it fills a
// value's every field deterministically, checks that none is left zero,
// and compares its JSON encoding with a fixture under testdata, so that a
// renamed JSON tag, a removed field or a new one fails a test until the
// fixture is reviewed and regenerated with -update.
package golden

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"
)

// Update makes Check rewrite fixtures instead of comparing with them
// (go test ./rpc ./server -run Golden -update).
var Update = flag.Bool("update", false, "rewrite golden fixtures from the current types")

var timeType = reflect.TypeOf(time.Time{})

// Fill sets every exported field reachable from ptr (a pointer) to a
// non-zero value derived from the field's path: strings name their path,
// numbers are small hashes of it, byte slices hold invalid UTF-8, other
// slices and maps hold one element, pointers are allocated. Fields tagged
// json:"-" are left alone, as they never reach the wire.
func Fill(ptr any) {
	v := reflect.ValueOf(ptr)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		panic("golden.Fill needs a non-nil pointer")
	}
	fill(v.Elem(), strings.ToLower(v.Elem().Type().Name()))
}

func num(path string) uint64 {
	h := fnv.New32a()
	h.Write([]byte(path))
	return uint64(h.Sum32()%997) + 1
}

func fill(v reflect.Value, path string) {
	if v.Type() == timeType {
		v.Set(reflect.ValueOf(time.Date(2026, 1, 2, 3, 4, 5, int(num(path))*1000, time.UTC)))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(path)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(num(path)%126 + 1))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		v.SetUint(num(path)%126 + 1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(num(path)) + 0.5)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem(), path)
		v.Set(p)
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			v.SetBytes(append([]byte{0xff, 0xfe}, path...))
			return
		}
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0), path+"[0]")
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k := reflect.New(v.Type().Key()).Elem()
		fill(k, path+".key")
		e := reflect.New(v.Type().Elem()).Elem()
		fill(e, path+".value")
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() || jsonName(f) == "-" {
				continue
			}
			fill(v.Field(i), path+"."+jsonName(f))
		}
	}
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

// Zero lists the paths of exported fields reachable from v that are zero
// (nil, empty, false, 0): a fixture built from v would not pin them.
func Zero(v any) []string {
	var out []string
	zero(reflect.ValueOf(v), reflect.TypeOf(v).String(), &out)
	return out
}

func zero(v reflect.Value, path string, out *[]string) {
	if v.Kind() == reflect.Struct && v.NumField() == 0 {
		return // a message without fields (a request that asks for everything)
	}
	if v.IsZero() || (v.Kind() == reflect.Slice || v.Kind() == reflect.Map) && v.Len() == 0 {
		*out = append(*out, path)
		return
	}
	if v.Type() == timeType {
		return
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.Elem().Kind() == reflect.Struct && v.Elem().NumField() == 0 {
			return
		}
		zero(v.Elem(), path, out)
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			zero(v.Index(i), fmt.Sprintf("%s[%d]", path, i), out)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			zero(it.Value(), fmt.Sprintf("%s[%v]", path, it.Key()), out)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if f.IsExported() && jsonName(f) != "-" {
				zero(v.Field(i), path+"."+f.Name, out)
			}
		}
	}
}

// T is the part of testing.TB that Check needs.
type T interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Check compares wire, one value's encoding as it goes on the wire
// (compact JSON, possibly after a prefix such as a raft type byte), with
// the fixture at path, stored indented for review; with -update it
// rewrites the fixture instead.
func Check(t T, path string, prefix, wire []byte) {
	t.Helper()
	if !bytes.HasPrefix(wire, prefix) {
		t.Fatalf("%s: encoding %q lacks prefix %q", path, wire, prefix)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, wire[len(prefix):], "", "  "); err != nil {
		t.Fatalf("%s: encoding is not JSON: %v", path, err)
	}
	pretty.WriteByte('\n')
	if *Update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatalf("%v", err)
		}
		if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
			t.Fatalf("%v", err)
		}
		return
	}
	want, err := Read(path)
	if err != nil {
		t.Fatalf("%s: %v (run the test with -update to create it, and review the diff)", path, err)
	}
	if got := wire[len(prefix):]; !bytes.Equal(got, want) {
		t.Errorf("%s: the encoding changed; a peer or log of the previous version reads the fixture.\ngot:  %s\nwant: %s\nIf the change is intended and compatible (docs/upgrades.md), rerun with -update and review the diff.", path, got, want)
	}
}

// Read returns a fixture in its compact (wire) form.
func Read(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c bytes.Buffer
	if err := json.Compact(&c, b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c.Bytes(), nil
}
