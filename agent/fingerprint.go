package agent

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// fingerprint reads the node's CPU and memory capacity.
func fingerprint() (structs.Slots, error) {
	mem, err := memTotal("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	return structs.Slots{
		structs.SlotCPU: structs.Whole(int64(runtime.NumCPU())),
		structs.SlotMem: structs.Whole(mem),
	}, nil
}

// memTotal reads MemTotal (bytes) from a meminfo file.
func memTotal(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("fingerprint memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("fingerprint memory: %q: %w", sc.Text(), err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("fingerprint memory: no MemTotal in %s", path)
}
