// epoll(7), which Swift's Glibc module does not export. Header only: libc has it.
#include <sys/epoll.h>
