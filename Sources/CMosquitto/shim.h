// libmosquitto (Debian's libmosquitto-dev), used as it is: the MQTT 5 client and its protocol constants.
#include <mosquitto.h>
#include <mqtt_protocol.h>
