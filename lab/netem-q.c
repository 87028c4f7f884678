/* netem-q: a tiny delay-and-loss link emulator for the NAT lab. The kernel the
 * lab runs on may lack sch_netem, so packets are sent to an NFQUEUE; this
 * program holds each one for a fixed delay, drops a share of them, and then
 * gives the verdict. One instance runs per namespace, started by ntcp-lab. */

/* libc's <netinet/in.h> must come before the kernel's netfilter headers. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nf_tables_compat.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

/* A constant delay keeps packets in arrival order, so a ring buffer is enough:
 * the oldest packet is always the next one due. */
#define RING_SIZE 65536u

struct held {
	uint32_t id;
	uint64_t due_ns;
};

struct emu {
	struct nfq_q_handle *qh;
	uint64_t delay_ns;
	double loss; /* probability in [0, 1] */
	uint64_t rng;
	struct held ring[RING_SIZE];
	unsigned head, count;
	unsigned long n_seen, n_dropped, n_delayed;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: loss decisions need to be cheap and seedable (for repeatable
 * runs), not cryptographic. */
static double next_uniform(struct emu *e)
{
	e->rng ^= e->rng >> 12;
	e->rng ^= e->rng << 25;
	e->rng ^= e->rng >> 27;
	return (double)((e->rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data)
{
	struct emu *e = data;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
	(void)msg;
	if (!ph)
		return 0;
	uint32_t id = ntohl(ph->packet_id);
	e->n_seen++;
	if (e->loss > 0 && next_uniform(e) < e->loss) {
		e->n_dropped++;
		return nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
	}
	/* A full ring lets the packet through at once rather than stalling it. */
	if (e->delay_ns == 0 || e->count == RING_SIZE)
		return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
	struct held *h = &e->ring[(e->head + e->count) % RING_SIZE];
	h->id = id;
	h->due_ns = now_ns() + e->delay_ns;
	e->count++;
	e->n_delayed++;
	return 0;
}

static void release_due(struct emu *e, uint64_t now, int all)
{
	while (e->count > 0) {
		struct held *h = &e->ring[e->head];
		if (!all && h->due_ns > now)
			break;
		nfq_set_verdict(e->qh, h->id, NF_ACCEPT, 0, NULL);
		e->head = (e->head + 1) % RING_SIZE;
		e->count--;
	}
}

/* Appends "NFQUEUE --queue-num Q --queue-bypass" to an existing nftables chain
 * through nft_compat. Needed because some kernels (the CI one among them) build
 * the xtables NFQUEUE target but not nft's native queue expression, and the
 * nft tool cannot express an xtables target. Bypass means that if this
 * program dies, packets flow undelayed instead of being dropped. */
static int install_compat_rule(int family, const char *table, const char *chain, uint16_t queue)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	memset(buf, 0, sizeof buf); /* the kernel must not see stale padding */
	struct mnl_nlmsg_batch *batch = mnl_nlmsg_batch_start(buf, sizeof buf);
	uint32_t seq = (uint32_t)time(NULL);
	struct nlmsghdr *nlh;
	struct nfgenmsg *nfg;

	nlh = mnl_nlmsg_put_header(mnl_nlmsg_batch_current(batch));
	nlh->nlmsg_type = NFNL_MSG_BATCH_BEGIN;
	nlh->nlmsg_flags = NLM_F_REQUEST;
	nlh->nlmsg_seq = seq++;
	nfg = mnl_nlmsg_put_extra_header(nlh, sizeof *nfg);
	nfg->nfgen_family = AF_UNSPEC;
	nfg->version = NFNETLINK_V0;
	nfg->res_id = htons(NFNL_SUBSYS_NFTABLES);
	mnl_nlmsg_batch_next(batch);

	nlh = mnl_nlmsg_put_header(mnl_nlmsg_batch_current(batch));
	nlh->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK;
	uint32_t rule_seq = seq;
	nlh->nlmsg_seq = seq++;
	nfg = mnl_nlmsg_put_extra_header(nlh, sizeof *nfg);
	nfg->nfgen_family = (uint8_t)family;
	nfg->version = NFNETLINK_V0;
	nfg->res_id = 0;
	mnl_attr_put_strz(nlh, NFTA_RULE_TABLE, table);
	mnl_attr_put_strz(nlh, NFTA_RULE_CHAIN, chain);
	struct nlattr *exprs = mnl_attr_nest_start(nlh, NFTA_RULE_EXPRESSIONS);
	struct nlattr *elem = mnl_attr_nest_start(nlh, NFTA_LIST_ELEM);
	mnl_attr_put_strz(nlh, NFTA_EXPR_NAME, "target");
	struct nlattr *edata = mnl_attr_nest_start(nlh, NFTA_EXPR_DATA);
	mnl_attr_put_strz(nlh, NFTA_TARGET_NAME, "NFQUEUE");
	mnl_attr_put_u32(nlh, NFTA_TARGET_REV, htonl(3));
	/* xtables pads target data to 8 bytes (XT_ALIGN). */
	unsigned char info[8] = {0};
	struct xt_NFQ_info_v3 q = {.queuenum = queue, .queues_total = 1, .flags = NFQ_FLAG_BYPASS};
	memcpy(info, &q, sizeof q);
	mnl_attr_put(nlh, NFTA_TARGET_INFO, sizeof info, info);
	mnl_attr_nest_end(nlh, edata);
	mnl_attr_nest_end(nlh, elem);
	mnl_attr_nest_end(nlh, exprs);
	mnl_nlmsg_batch_next(batch);

	nlh = mnl_nlmsg_put_header(mnl_nlmsg_batch_current(batch));
	nlh->nlmsg_type = NFNL_MSG_BATCH_END;
	nlh->nlmsg_flags = NLM_F_REQUEST;
	nlh->nlmsg_seq = seq++;
	nfg = mnl_nlmsg_put_extra_header(nlh, sizeof *nfg);
	nfg->nfgen_family = AF_UNSPEC;
	nfg->version = NFNETLINK_V0;
	nfg->res_id = htons(NFNL_SUBSYS_NFTABLES);
	mnl_nlmsg_batch_next(batch);

	struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
	if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		perror("netem-q: netlink");
		if (nl)
			mnl_socket_close(nl);
		return -1;
	}
	int rc = 0;
	if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(batch), mnl_nlmsg_batch_size(batch)) < 0) {
		perror("netem-q: send rule");
		rc = -1;
	} else {
		ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof buf);
		if (n < 0) {
			perror("netem-q: receive ack");
			rc = -1;
		} else if (mnl_cb_run(buf, (size_t)n, rule_seq, mnl_socket_get_portid(nl), NULL, NULL) < 0) {
			fprintf(stderr, "netem-q: cannot add NFQUEUE rule to %s %s: %s\n", table, chain, strerror(errno));
			rc = -1;
		}
	}
	mnl_socket_close(nl);
	mnl_nlmsg_batch_stop(batch);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: netem-q -q QUEUE [-d DELAY_MS] [-l LOSS_PCT] [-s SEED] [-r READY_FILE]\n"
		"               [-i ip|ip6:TABLE:CHAIN]...\n"
		"Holds every packet of NFQUEUE QUEUE for DELAY_MS milliseconds and drops\n"
		"LOSS_PCT percent of them. -i appends the queueing rule to an nftables\n"
		"chain (via the xtables NFQUEUE target, with bypass). Once the queue is\n"
		"bound, READY_FILE is created. SIGTERM/SIGINT release held packets and exit.\n");
}

int main(int argc, char **argv)
{
	static struct emu e;
	long queue = -1;
	double delay_ms = 0, loss_pct = 0;
	const char *ready = NULL;
	const char *installs[8];
	int n_installs = 0;
	e.rng = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);

	int c;
	while ((c = getopt(argc, argv, "q:d:l:s:r:i:h")) != -1) {
		switch (c) {
		case 'q': queue = strtol(optarg, NULL, 10); break;
		case 'd': delay_ms = strtod(optarg, NULL); break;
		case 'l': loss_pct = strtod(optarg, NULL); break;
		case 's': e.rng = strtoull(optarg, NULL, 0) | 1; break;
		case 'r': ready = optarg; break;
		case 'i':
			if (n_installs == 8) {
				fprintf(stderr, "netem-q: too many -i\n");
				return 2;
			}
			installs[n_installs++] = optarg;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (queue < 0 || queue > 65535 || delay_ms < 0 || delay_ms > 60000 || loss_pct < 0 || loss_pct > 100) {
		usage(stderr);
		return 2;
	}
	e.delay_ns = (uint64_t)(delay_ms * 1e6);
	e.loss = loss_pct / 100.0;

	struct sigaction sa = {0};
	sa.sa_handler = on_signal; /* no SA_RESTART: poll() must wake up */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	struct nfq_handle *h = nfq_open();
	if (!h) {
		perror("netem-q: nfq_open");
		return 1;
	}
	e.qh = nfq_create_queue(h, (uint16_t)queue, on_packet, &e);
	if (!e.qh) {
		fprintf(stderr, "netem-q: cannot bind queue %ld: %s\n", queue, strerror(errno));
		nfq_close(h);
		return 1;
	}
	/* Metadata only: the verdict reinjects the packet unchanged, so its bytes
	 * never need to cross into user space. */
	nfq_set_mode(e.qh, NFQNL_COPY_META, 0);
	nfq_set_queue_maxlen(e.qh, RING_SIZE);
	nfq_set_queue_flags(e.qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN);
	nfnl_rcvbufsiz(nfq_nfnlh(h), 8u << 20);

	/* The rule goes in only after the queue is bound, so no packet waits on
	 * a queue nobody listens to. */
	for (int i = 0; i < n_installs; i++) {
		char spec[256];
		snprintf(spec, sizeof spec, "%s", installs[i]);
		char *fam = spec, *table = strchr(spec, ':'), *chain = NULL;
		if (table) {
			*table++ = '\0';
			chain = strchr(table, ':');
			if (chain)
				*chain++ = '\0';
		}
		int family = strcmp(fam, "ip") == 0 ? NFPROTO_IPV4 : strcmp(fam, "ip6") == 0 ? NFPROTO_IPV6 : -1;
		if (family < 0 || !chain || install_compat_rule(family, table, chain, (uint16_t)queue) < 0) {
			fprintf(stderr, "netem-q: bad or failed -i %s\n", installs[i]);
			nfq_destroy_queue(e.qh);
			nfq_close(h);
			return 1;
		}
	}

	if (ready) {
		FILE *f = fopen(ready, "w");
		if (f) {
			fprintf(f, "%d\n", (int)getpid());
			fclose(f);
		}
	}

	int fd = nfq_fd(h);
	static char buf[65536];
	while (!stop_requested) {
		uint64_t now = now_ns();
		release_due(&e, now, 0);
		/* Wake at the next due packet, and at least every 200 ms so that a
		 * signal landing just before poll() cannot leave us asleep. */
		int timeout = 200;
		if (e.count > 0) {
			uint64_t due = e.ring[e.head].due_ns;
			uint64_t wait_ms = due > now ? (due - now + 999999) / 1000000 : 0;
			if (wait_ms < (uint64_t)timeout)
				timeout = (int)wait_ms;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int r = poll(&pfd, 1, timeout);
		if (r < 0 && errno != EINTR) {
			perror("netem-q: poll");
			break;
		}
		if (r > 0) {
			/* Drain what is readable without blocking the timer. */
			for (;;) {
				ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
				if (n < 0) {
					if (errno == ENOBUFS)
						continue; /* overrun: the kernel's fail-open covers it */
					break;
				}
				nfq_handle_packet(h, buf, (int)n);
			}
		}
	}
	release_due(&e, 0, 1);
	fprintf(stderr, "netem-q: queue %ld: %lu packets, %lu delayed, %lu dropped\n", queue, e.n_seen,
		e.n_delayed, e.n_dropped);
	nfq_destroy_queue(e.qh);
	nfq_close(h);
	if (ready)
		unlink(ready);
	return 0;
}
