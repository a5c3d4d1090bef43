# The SPDM requests VCA (hex) that set up a connection, then the GET_CERTIFICATE
# request CERT, through the kernel's DOE driver; the response is reported whole.
insmod /modules/vdevtest.ko
for req in $VCA; do
	echo "1 $req" > $E/doe || r doe_vca_failed "$req"
done
echo "1 $CERT" > $E/doe
r doe_rc "$(cut -d' ' -f1 $E/doe)"
r doe_rsp "$(cut -d' ' -f2 $E/doe)"
rmmod vdevtest
