# Helpers every guest test script shares; the host puts this file after the
# variables it prepends (EP, MB, ...) and before the script itself.  /init
# defines r KEY VALUE, which prints "@@VDEV KEY VALUE" for the host to read.
if [ -n "$EP" ]; then E=/sys/bus/pci/devices/$EP; fi
if [ -n "$MB" ]; then M=/sys/bus/pci/devices/$MB; fi
# rd FILE: FILE's contents on one line, nothing if it cannot be read.
rd() { cat "$1" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//'; }
# w KEY VALUE FILE: write VALUE to FILE and report KEY as "rc message"
# ("0 ok" on success, else the shell's exit status and the kernel's error).
w() {
	msg=$( { echo "$2" > "$3"; } 2>&1 )
	r "$1" "$? ${msg:-ok}"
}
