package main

// Library rows of the fault-serving suite. Each is one function of the case, so a new way of
// serving faults in the library is one more row.

const (
	rowServer   = "uffd.Server"
	rowServerFA = "uffd.Server (fault-around)"
	rowNative   = "mirror.ServeFaults (native path)"
)

// libraryFaultRows returns the library's rows for a case.
func libraryFaultRows(fc faultCase, src []byte) []row {
	var rows []row
	rows = append(rows, serverRow(fc, src))
	if fc.kind == kindCopy && fc.block == pageSize && fc.threads == 1 && !fc.random {
		rows = append(rows, serverFaultAroundRow(fc, src))
	}
	if fc.kind == kindCopy && fc.block == pageSize {
		rows = append(rows, nativeRow(fc, src))
	}
	return rows
}

func serverRow(fc faultCase, src []byte) row {
	return row{name: rowServer, skip: func() string { return "uffd.Server is not in the library yet" }}
}

func serverFaultAroundRow(fc faultCase, src []byte) row {
	return row{name: rowServerFA, skip: func() string { return "uffd.Server is not in the library yet" }}
}

func nativeRow(fc faultCase, src []byte) row {
	return row{name: rowNative, skip: func() string { return "mirror.ServeFaults is not in the library yet" }}
}
