/*
 * logline.c: the start of the servers' log lines, with a timestamp for a
 * terminal or a file, or with a syslog priority prefix and no timestamp when
 * standard error is the systemd journal (docs/install.md, "Logs").
 */
#include "logline.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

bool ntcp_log_to_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

int ntcp_log_prefix(char *buf, size_t len, int level, const char *prog, bool millis)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    static const int priority[] = {3, 4, 6, 7}; /* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */
    int l = level < 0 ? 0 : level > 3 ? 3 : level;
    const char *sep = prog && prog[0] ? " " : "";
    if (!prog)
        prog = "";
    if (ntcp_log_to_journal())
        return snprintf(buf, len, "<%d>%s%s%s: ", priority[l], prog, sep, names[l]);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[64];
    if (millis)
        snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000);
    else
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return snprintf(buf, len, "%s %s%s%s: ", stamp, prog, sep, names[l]);
}
